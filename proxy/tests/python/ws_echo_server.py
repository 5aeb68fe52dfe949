"""A WebSocket echo server (Python's `websockets`, an independent implementation).

Listens on 127.0.0.1 on a free port and prints the port on its first line. Each text or
binary message is sent back as it came; a text message "whoami" is answered with the
server's name (argv[1]) and the path the client asked for.
"""

import asyncio
import sys

from websockets.asyncio.server import serve

NAME = sys.argv[1] if len(sys.argv) > 1 else "ws"


async def echo(websocket):
    async for message in websocket:
        if message == "whoami":
            await websocket.send(f"{NAME} {websocket.request.path}")
        else:
            await websocket.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()


asyncio.run(main())
