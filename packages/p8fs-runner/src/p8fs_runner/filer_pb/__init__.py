"""SeaweedFS filer gRPC stubs (``filer_pb2``, ``filer_pb2_grpc``) generated from ``filer.proto``.

Written by ``scripts/gen_filer_stubs.py``; see ``README.md`` here for the proto's source and the
generator versions. Importing this package imports neither protobuf nor grpc: the bridge imports
the stub modules when it starts following the filer.
"""
