#!/usr/bin/env node
// Launcher: run the TypeScript sources directly through tsx so a fresh clone needs no build step.
import { register } from 'tsx/esm/api';

register();
await import('./cli.ts');
