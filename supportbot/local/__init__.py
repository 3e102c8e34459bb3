"""Embedded services for running supportbot on one machine with nothing configured.

Each is a real server (PostgreSQL, Redis, a llama.cpp model server) started as a
child process, its data under var/, found again by later runs and by manage.py.
"""
