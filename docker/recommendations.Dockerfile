# The recommendations demo service (gRPC) in an empty image (see docker/build.sh).
FROM scratch
COPY recommendations mesh-probe /
USER 65534:65534
EXPOSE 50051
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "tcp://127.0.0.1:50051"]
ENTRYPOINT ["/recommendations"]
