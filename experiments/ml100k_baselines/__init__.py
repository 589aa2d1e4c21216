"""ml-100k: jaxrec MF against most-popular, implicit ALS and implicit BPR."""
