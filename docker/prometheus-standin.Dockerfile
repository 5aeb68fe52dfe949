# A local stand-in for the prom/prometheus image where no image can be pulled: Debian's
# prometheus binary with the only two libraries it links (glibc and its loader) and its web
# UI files, in an empty image laid out like the official one (binary in /bin, data in
# /prometheus, user nobody). docker/prometheus-standin.sh builds it; compose.test.sh, and
# docker/up.sh where the official image cannot be pulled, point PROMETHEUS_IMAGE at it.
FROM scratch
COPY ld-linux-x86-64.so.2 /lib64/
COPY libc.so.6 /lib/x86_64-linux-gnu/
COPY prometheus /bin/
COPY web/ /usr/share/prometheus/web/
COPY --chown=65534:65534 empty/ /prometheus/
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
