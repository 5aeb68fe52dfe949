"""Steady page loads for the compose end-to-end tests (compose.test.sh, compose.ha.test.sh),
imported by their Python steps so both load the page, count failures and report alike.

Each test keeps its own faults and checks: it runs them as side tasks of `PageLoads.run`
and reads `results` afterwards.
"""
import collections, re, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor


class PageLoads:
    """Loads of one page at a fixed rate, open loop: a slow answer does not delay the next
    load, so a failure shows up as failed loads rather than as a lower rate."""

    def __init__(self, page, rate, duration):
        self.page, self.rate, self.duration = page, rate, duration
        self.results = []  # (seconds since start, served by or None, failure reason or None)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def load(self):
        started = time.monotonic() - self.t0
        served, reason = None, None
        try:
            with urllib.request.urlopen(self.page, timeout=10) as answer:
                body = answer.read().decode()
            if "<title>Online Books For You</title>" not in body or body.count("<li>") != 3:
                reason = "page without the title or 3 books"
            m = re.search(r"instance <code>([^<]+)</code>", body)
            served = m.group(1) if m else None
        except Exception as error:  # HTTP 5xx, refused, timeout: all count as failed loads
            reason = f"{type(error).__name__}: {error}"
        with self.lock:
            self.results.append((started, served, reason))

    def run(self, *side_tasks):
        """Loads the page every 1/rate s for duration s while each side task runs in a thread
        of its own; returns the seconds since start once the loads and the tasks are done."""
        threads = [threading.Thread(target=task) for task in side_tasks]
        for t in threads:
            t.start()
        # 32 workers: at 50 loads/s the rate holds while answers take up to 0.64 s.
        with ThreadPoolExecutor(max_workers=32) as pool:
            for n in range(int(self.rate * self.duration)):
                delay = self.t0 + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.load)
        for t in threads:
            t.join()
        return time.monotonic() - self.t0

    def print_rate(self, elapsed):
        print(f"  {len(self.results)} page loads in {elapsed:.1f} s ({len(self.results) / elapsed:.1f}/s)")

    def print_failures(self):
        """Prints how many loads failed and the five most common reasons; returns the failed."""
        failed = [r for r in self.results if r[2]]
        print(f"FAILED PAGE LOADS: {len(failed)}")
        for reason, n in collections.Counter(r for _, _, r in failed).most_common(5):
            print(f"  {n} x {reason}")
        return failed
