# C types for the compiled build (see setup.py); protocol/response.py stays plain Python.
cimport cython

cdef class ResponseHeaders:
    cdef public object content_length
    cdef public bint rewrite_length, close, has_date, has_server

cdef class Response:
    cdef public object status, headers, server, remaining, version
    cdef public ResponseHeaders info
    cdef public Py_ssize_t code, framing, body_sent, excess, short
    cdef public bint head_request, keep_alive, started, ended

    @cython.locals(framing=Py_ssize_t, keep_alive=bint)
    cpdef head(self, content_length=*, close=*)
    cpdef body(self, data)
    cpdef end(self)
    cpdef whole_parts(self, data, close=*)
