# meshctl inject-webhook, the injection webhook for Kubernetes, in an empty image (see
# docker/build.sh and k8s/webhook/).
FROM scratch
COPY meshctl mesh-probe /
USER 65534:65534
EXPOSE 8443
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "tcp://127.0.0.1:8443"]
ENTRYPOINT ["/meshctl", "inject-webhook"]
