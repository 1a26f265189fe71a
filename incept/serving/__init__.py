"""Prediction through a served model: TF Serving's gRPC and REST clients
(``grpc``, ``rest``), the prediction-backend interface they implement
(``backend``), the decoding of the serving signature's outputs (``outputs``)
and TF Serving's REST JSON (``tfserving_json``). The CLI (``incept predict``)
and the gateway both use them."""
