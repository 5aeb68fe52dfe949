# The marketplace demo web page in an empty image (see docker/build.sh).
FROM scratch
COPY marketplace mesh-probe /
USER 65534:65534
EXPOSE 5000
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "http://127.0.0.1:5000/healthz"]
ENTRYPOINT ["/marketplace"]
