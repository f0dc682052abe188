# C types for the compiled build (see setup.py); wsgi.py stays plain Python.
cimport cython

from greenserve.protocol.response cimport ResponseHeaders

@cython.locals(info=ResponseHeaders)
cpdef check_headers(headers, upgrade=*)

cdef class InputStream:
    cdef object _receive, _buffer
    cdef Py_ssize_t _pos
    cdef bint _done

    @cython.locals(pos=Py_ssize_t, have=Py_ssize_t, unlimited=bint)
    cpdef read(self, size=*)

cdef class StartResponse:
    cdef object _connection, _request
