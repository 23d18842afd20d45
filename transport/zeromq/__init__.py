"""ZeroMQ backend: a ROUTER broker process (``rtbatch broker``) and its client transport."""
