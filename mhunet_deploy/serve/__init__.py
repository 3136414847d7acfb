"""`mhunet serve`: the infer pipeline behind HTTP, with a one-page web front end.

``upload`` streams a multipart upload into a job folder under a size limit, ``store`` keeps job
folders bounded in count, bytes and age, ``jobs`` runs them one at a time on the one loaded backend
through :func:`mhunet_deploy.pipeline.infer_volume` (the CLI's code path), ``app`` maps all of it to
HTTP, and ``server`` binds the socket and runs uvicorn. Needs the ``serve`` extra (FastAPI, uvicorn,
python-multipart); nothing else in the package imports it.
"""
