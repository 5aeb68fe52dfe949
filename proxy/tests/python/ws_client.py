"""A WebSocket client (Python's `websockets`) that talks to an echo server through a
sidecar: connects to ws://HOST/PATH at the given address, asks whoami, echoes a text, a
binary and a 1 MiB message, pings, closes cleanly, and prints what it saw as JSON.

Usage: ws_client.py IP:PORT HOST PATH
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main():
    address, host, path = sys.argv[1], sys.argv[2], sys.argv[3]
    ip, port = address.rsplit(":", 1)
    seen = {}
    async with connect(
        f"ws://{host}{path}",
        host=ip,
        port=int(port),
        max_size=None,
        open_timeout=20,
        # Uncompressed: the 1 MiB message crosses the mesh as 1 MiB.
        compression=None,
    ) as ws:
        seen["subprotocol_status"] = ws.response.status_code
        await ws.send("whoami")
        seen["whoami"] = await ws.recv()
        await ws.send("hello")
        seen["text"] = await ws.recv()
        await ws.send(b"\x00\x01\x02")
        seen["binary"] = list(await ws.recv())
        big = bytes(range(256)) * 4096
        await ws.send(big)
        seen["big_echoed"] = (await ws.recv()) == big
        pong = await ws.ping()
        await asyncio.wait_for(pong, 20)
        seen["pong"] = True
    seen["close_code"] = ws.close_code
    print(json.dumps(seen))


asyncio.run(main())
