// Workers run in processes of their own, so that each one's memory can be
// read from /proc and no queue shares an event loop with the harness. They
// talk JSON lines: events on stdout, commands on stdin.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import readline from "node:readline";

export class Child {
  constructor(name, command, args, env) {
    this.name = name;
    this.proc = spawn(command, args, {
      env: { ...process.env, ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.events = [];
    this.waiters = [];
    this.stderr = "";
    this.exited = new Promise((resolve) => this.proc.on("exit", (code, signal) =>
      resolve({ code, signal })));
    this.proc.stderr.on("data", (d) => {
      this.stderr = (this.stderr + d).slice(-20000);
    });
    readline.createInterface({ input: this.proc.stdout }).on("line", (line) => {
      // Worker logs (the runner prints two JSON lines per task) pass unparsed.
      if (!line.startsWith('{"bench"')) return;
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      this.events.push(event);
      this.waiters = this.waiters.filter((w) => !w(event));
    });
  }

  get pid() {
    return this.proc.pid;
  }

  /** Resolves with the first event named `bench` (seen already or to come). */
  waitFor(bench, timeoutMs = 60_000) {
    const seen = this.events.find((e) => e.bench === bench);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `${this.name}: no "${bench}" event within ${timeoutMs} ms; stderr: ${this.stderr}`)),
        timeoutMs);
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${code ?? signal}) before "${bench}"; ` +
          `stderr: ${this.stderr}`));
      });
      this.waiters.push((event) => {
        if (event.bench !== bench) return false;
        clearTimeout(timer);
        resolve(event);
        return true;
      });
    });
  }

  send(command) {
    this.proc.stdin.write(JSON.stringify(command) + "\n");
  }

  /** Peak resident memory (VmHWM) of the worker process, in bytes. */
  peakRss() {
    try {
      const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
      const m = /VmHWM:\s+(\d+) kB/.exec(status);
      return m ? Number(m[1]) * 1024 : null;
    } catch {
      return null;
    }
  }

  /** Asks the worker to stop, then ends it after `graceMs`. */
  async stop(graceMs = 10_000) {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}
