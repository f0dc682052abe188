# C types for the compiled build (see setup.py); wsgi.py stays plain Python.
cimport cython

from greenserve.protocol.response cimport ResponseHeaders

@cython.locals(info=ResponseHeaders)
cpdef check_headers(headers, upgrade=*)
