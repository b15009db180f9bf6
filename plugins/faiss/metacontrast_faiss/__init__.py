"""metacontrast-faiss: memories (key queue, momentum memory bank) and faiss search."""
