/**
 * An error caused by the user's input: the CLI prints its message on one line and exits 1; `details` (such as
 * the keys of a LoRA that do not fit) follow on the lines below it.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly details?: string,
  ) {
    super(message);
  }
}
