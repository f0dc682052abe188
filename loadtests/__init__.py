"""Load-test harness for greenserve and its peers (locust for realistic load, wrk for raw figures).

Run ``python -m loadtests --help``; see loadtests/README.md.
"""
