/**
 * One update at a time (balena-supervisor's exclusive runner): `run` waits for the previous job and hands each
 * job an AbortSignal; `cancel` aborts the running one. Cancelling is not an error: the job sees
 * signal.aborted and returns.
 */
export class ExclusiveRunner {
  private tail: Promise<unknown> = Promise.resolve();
  private current: AbortController | null = null;

  get busy(): boolean {
    return this.current !== null;
  }

  run<T>(job: (signal: AbortSignal) => Promise<T>, parent?: AbortSignal): Promise<T> {
    const next = this.tail.then(async () => {
      const ac = new AbortController();
      const onParent = () => ac.abort(parent?.reason);
      if (parent?.aborted) ac.abort(parent.reason);
      parent?.addEventListener('abort', onParent, { once: true });
      this.current = ac;
      try {
        return await job(ac.signal);
      } finally {
        parent?.removeEventListener('abort', onParent);
        if (this.current === ac) this.current = null;
      }
    });
    this.tail = next.catch(() => {});
    return next;
  }

  cancel(reason: string = 'cancelled'): void {
    this.current?.abort(new Error(reason));
  }

  /** Resolves when every queued job has finished. */
  idle(): Promise<void> {
    return this.tail.then(() => {});
  }
}
