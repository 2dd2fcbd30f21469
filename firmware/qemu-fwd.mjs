// One guest connection <-> one loopback TCP connection, for QEMU's `guestfwd=...-cmd:` (QEMU runs one copy
// per connection the guest opens). Lets the emulated board reach the host's loopback services while its
// user-mode network stays `restrict=on` (no route anywhere else).
import { connect } from 'node:net';

const sock = connect(Number(process.argv[3]), process.argv[2]);
process.stdin.pipe(sock);
sock.pipe(process.stdout);
sock.on('error', () => process.exit(1));
sock.on('close', () => process.exit(0));
process.stdin.on('end', () => sock.end());
