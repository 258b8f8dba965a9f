"""Store: the index folder on disk: the SQLite catalog (every SQL statement), the FAISS vector stores,
and the folder itself (writer lock, creation, checkpoints). Nothing here imports torch or a model.
"""
