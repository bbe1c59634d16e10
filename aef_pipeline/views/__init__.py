"""Seeing and comparing fields: quicklooks, similarity to reference vectors, change between periods."""
