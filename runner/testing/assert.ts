// The few assertions every test suite here uses (runner, db and fixtures).
// Deno's standard library lives on JSR, which this project cannot reach.

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

export function assertEquals<T>(actual: T, expected: T, message: string): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}: expected ${e}, got ${a}`);
}

export function assertMatch(actual: unknown, pattern: RegExp, message: string): void {
  if (typeof actual !== "string" || !pattern.test(actual)) {
    throw new Error(`${message}: expected a match for ${pattern}, got ${JSON.stringify(actual)}`);
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
