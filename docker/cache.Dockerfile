# The cache: Debian's Redis in an empty image, with exactly the shared libraries it links
# (docker/redis-files.sh) and redis-cli beside it, for looking inside and for tests:
#   docker exec <container> /redis-cli INFO keyspace
#   docker run --rm --network container:<sidecar> mesh/cache:dev /redis-cli -p 6379 PING
# No entrypoint, so either binary runs by its path.
FROM scratch
COPY cache-fs/ /
COPY mesh-probe /
USER 65534:65534
EXPOSE 6379
HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/mesh-probe", "tcp://127.0.0.1:6379"]
# A cache: nothing written to disk (no snapshots, no append-only file), the least recently
# used keys evicted past maxmemory, loopback only (reached through a sidecar beside it).
CMD ["/redis-server", "--bind", "127.0.0.1", "--port", "6379", "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--maxmemory", "48mb", "--maxmemory-policy", "allkeys-lru"]
