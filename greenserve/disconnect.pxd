# C types for the compiled build (see setup.py); disconnect.py stays plain Python.

cdef class Disconnected:
    cdef object _connection, _watcher, _links
    cdef readonly object _event
    cdef public bint half_closed

    cpdef set(self)
    cpdef finish(self, connection_closing)
    cpdef _watch(self)
    cpdef _stop_watching(self)
