# mesh-registry in an empty image. Built by docker/build.sh from a staging directory that
# holds only the static binaries, not the whole target dir.
FROM scratch
COPY mesh-registry mesh-probe /
# The snapshot directory, owned by the unprivileged user. A scratch image has no chown, so
# the ownership comes in with the copy; a fresh named volume mounted here starts as a copy
# of this directory, ownership included.
COPY --chown=65534:65534 empty/ /data/
# The same for the CA (compose: `gen-ca --out /ca` into a volume mounted here, which the
# registry or its replicas then mount) and for the copy of its certificate alone that
# sidecars check the registry with (`gen-ca --bundle-out /ca-bundle`).
COPY --chown=65534:65534 empty/ /ca/
COPY --chown=65534:65534 empty/ /ca-bundle/
USER 65534:65534
EXPOSE 7700 7743
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "http://127.0.0.1:7700/readyz"]
ENTRYPOINT ["/mesh-registry"]
CMD ["--listen", "0.0.0.0:7700", "--data-dir", "/data"]
