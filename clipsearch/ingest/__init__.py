"""Ingest: bring an index in line with folders: scan (walk, ignore rules) -> decode (worker processes)
-> sync (plan, encode, commit). Takes an index folder and a model; never the façade.
"""
