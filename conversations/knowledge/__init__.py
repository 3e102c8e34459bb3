"""Each site's knowledge base: articles, their chunks, and retrieval per question."""
