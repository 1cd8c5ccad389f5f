// A counting TCP relay between a queue's worker and PostgreSQL. It reads the
// wire protocol's message headers in both directions and counts what the
// worker asks and what the server answers, whatever client library the worker
// uses (postgres.js, node-postgres), so every queue is measured the same way.
//
// Counted:
//   statements   simple Query ('Q') plus extended-protocol Execute ('E')
//   roundTrips   ReadyForQuery ('Z') from the server: one per Query or Sync,
//                i.e. each time the client waits for the server
//   transactions ReadyForQuery with status idle ('I'): one per transaction
//                that ended (an autocommit statement or an explicit COMMIT)
// Pipelined clients (postgres.js) may have several round trips in flight on
// one connection; each still counts once.

import net from "node:net";

/** Splits a protocol stream into message type bytes; the first client message has none. */
function messageReader(hasStartup, onMessage) {
  let buffered = Buffer.alloc(0);
  let startup = hasStartup;
  return (chunk) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let at = 0;
    for (;;) {
      if (startup) {
        if (buffered.length - at < 8) break;
        const length = buffered.readInt32BE(at);
        if (buffered.length - at < length) break;
        const code = buffered.readInt32BE(at + 4);
        // An SSLRequest (80877103) is followed by another startup packet.
        if (code !== 80877103) startup = false;
        at += length;
        continue;
      }
      if (buffered.length - at < 5) break;
      const type = buffered[at];
      const length = buffered.readInt32BE(at + 1);
      if (buffered.length - at < length + 1) break;
      onMessage(type, buffered, at + 5, length - 4);
      at += length + 1;
    }
    buffered = at === buffered.length ? Buffer.alloc(0) : buffered.subarray(at);
  };
}

const Q = 0x51, E = 0x45, Z = 0x5a, I = 0x49, N_SSL = 0x4e;

/**
 * Starts a relay on 127.0.0.1 (an ephemeral port) to `target` {host, port}.
 * Returns { port, counts(), close() }; counts() is a snapshot of the totals.
 */
export async function startWireCounter(target) {
  const totals = { statements: 0, roundTrips: 0, transactions: 0, connections: 0 };
  const sockets = new Set();

  const server = net.createServer((client) => {
    totals.connections++;
    const upstream = net.connect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    let sslAnswerPending = false;

    const fromClient = messageReader(true, (type) => {
      if (type === Q || type === E) totals.statements++;
    });
    let serverStarted = false;
    const fromServer = messageReader(false, (type, buf, at) => {
      if (type === Z) {
        totals.roundTrips++;
        if (buf[at] === I) totals.transactions++;
      }
    });

    client.on("data", (chunk) => {
      // An SSLRequest gets a single byte answer ('N') with no header.
      if (!serverStarted && chunk.length === 8 && chunk.readInt32BE(4) === 80877103) {
        sslAnswerPending = true;
      }
      fromClient(chunk);
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      let rest = chunk;
      if (sslAnswerPending && rest.length > 0 && rest[0] === N_SSL) {
        sslAnswerPending = false;
        rest = rest.subarray(1);
      }
      serverStarted = true;
      if (rest.length) fromServer(rest);
      client.write(chunk);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    counts: () => ({ ...totals }),
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
