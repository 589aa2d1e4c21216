"""ml-100k explicit ratings, 5-fold CV: jaxrec MF, SVD++ and two-tower against Surprise SVD and SVD++."""
