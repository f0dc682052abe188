# C types for the compiled build (see setup.py); protocol/parser.py stays plain Python.
cimport cython

cdef class Limits:
    cdef public Py_ssize_t request_line, field_size, fields, head
    cdef public object body

cdef class RequestParser:
    cdef public Limits limits
    cdef public object _buf, _error, request, _remaining, _body_seen
    cdef public Py_ssize_t _pos, _state, _checked, _clean, _lines, _empty_lines
    cdef public bint _partial

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t)
    cpdef next_request(self)

    @cython.locals(host_count=Py_ssize_t, seen_singletons=Py_ssize_t, field_size=Py_ssize_t,
                   bit=Py_ssize_t, field=tuple)
    cdef _parse_head(self, list lines)
