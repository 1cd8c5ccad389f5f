// Serve a fixture on 127.0.0.1, on the given port or a free one, and resolve
// once it listens, with the port it got.

export async function serveOnLoopback(
  handler: Deno.ServeHandler,
  port = 0,
): Promise<{ server: Deno.HttpServer; port: number }> {
  const { promise: listening, resolve } = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port,
    onListen: (addr) => resolve(addr as Deno.NetAddr),
  }, handler);
  const addr = await listening;
  return { server, port: addr.port };
}
