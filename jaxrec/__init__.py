"""jaxrec: a JAX research framework for recommender systems with sharded embedding tables."""

__version__ = "0.1.0"
