/**
 * One GPU, one job at a time: a FIFO of jobs with a bound on how many may wait. A job is dropped from the queue
 * when its caller's signal aborts (the client went away) and, once running, sees that abort on its own signal.
 */

/** The queue holds as many waiting jobs as it may: the server answers 503. */
export class QueueFullError extends Error {}

/** Why a job's signal aborted: A1111's /interrupt. The job ends early and answers with what it has. */
export class InterruptedError extends Error {
  constructor() {
    super("interrupted");
  }
}

interface Entry {
  controller: AbortController;
  start: () => void;
}

export class JobQueue {
  private readonly waiting: Entry[] = [];
  private running?: Entry;

  constructor(
    /** Jobs that may wait while one runs. */
    readonly capacity: number,
  ) {}

  /** Jobs waiting, not counting the running one. */
  get pending(): number {
    return this.waiting.length;
  }

  get busy(): boolean {
    return this.running !== undefined;
  }

  /**
   * Runs `work` after the jobs queued before it. Rejects with QueueFullError when `capacity` jobs already wait,
   * and with the signal's reason when `signal` aborts while the job waits; a running job gets the abort through
   * the signal passed to `work`.
   */
  run<T>(work: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.running && this.waiting.length >= this.capacity) {
      return Promise.reject(new QueueFullError(`the queue is full (${this.capacity} requests waiting)`));
    }
    return new Promise<T>((resolve, reject) => {
      const controller = new AbortController();
      const entry: Entry = {
        controller,
        start: () => {
          this.running = entry;
          work(controller.signal)
            .then(resolve, reject)
            .finally(() => {
              signal?.removeEventListener("abort", onAbort);
              this.running = undefined;
              this.next();
            });
        },
      };
      const onAbort = () => {
        const index = this.waiting.indexOf(entry);
        if (index >= 0) {
          this.waiting.splice(index, 1);
          reject(signal?.reason);
        } else controller.abort(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(entry);
      if (!this.running) this.next();
    });
  }

  /** Aborts the running job with an InterruptedError; false when none runs. */
  interrupt(): boolean {
    if (!this.running) return false;
    this.running.controller.abort(new InterruptedError());
    return true;
  }

  private next(): void {
    this.waiting.shift()?.start();
  }
}
