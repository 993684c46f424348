"""`otxlite serve`: the HTTP app (app: routes, batching, limits, metrics; standalone, it also ships inside
deploy.zip), the model it serves as the API loads it (served_model), and starting it on uvicorn or on Ray Serve
replicas (launch, ray_serve). Imports from otxlite.core, data, models and inference; never from engine, export or
the API.
"""
