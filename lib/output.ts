/**
 * Output conventions for every command: data to stdout (human text, or ONE JSON document with --json),
 * progress and diagnostics to stderr so scripts can pipe stdout safely.
 */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

export function info(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Numbered step lines with elapsed time, e.g. `[2/5] composing the RAM root (3.1 s)`. */
export function stepReporter(total: number, quiet = false): (step: string) => void {
  let n = 0;
  const start = Date.now();
  return (step: string) => {
    n += 1;
    if (!quiet) info(`[${n}/${total}] ${step}  (+${((Date.now() - start) / 1000).toFixed(1)} s)`);
  };
}
