# mesh-proxy, the sidecar, in an empty image (see docker/build.sh).
FROM scratch
COPY mesh-proxy mesh-probe /
USER 65534:65534
EXPOSE 4143 4191
# Ready once the sidecar has registered (or at once for an outbound-only sidecar).
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "http://127.0.0.1:4191/ready"]
ENTRYPOINT ["/mesh-proxy"]
