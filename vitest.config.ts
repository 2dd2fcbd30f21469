import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // QEMU boots and real-tool checks are slow under software emulation; each test sets its own budget.
    testTimeout: 60_000,
    hookTimeout: 600_000,
    // Boot tests each take a core; two workers fit the 2-core CI machine.
    maxWorkers: 2,
  },
});
