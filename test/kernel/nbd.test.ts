// The nbd target on the real driver against real NBD servers from Debian packages (nbdkit, qemu-nbd): fio's
// verification at QD64 on two queues in every data mode and send mode, ext4 whose 40 MB of files survive del
// and re-add over nbdkit and over qemu-nbd's qcow2, a read-only export,
// handshakes that fail in one line and leave nothing, a server that dies or hangs under fio (EIO within
// --timeout, no hang, del works), a reconnect across a server restart; add with no --queues against qemu-nbd and
// nbd-server, a FLUSH after a reconnect that lost cached writes, a READ error reply carrying a payload, and
// del while requests wait on a slow server.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { cli, cliJson, delAll, failedInOneLine, FIO_VERIFY, fioInBackground, fioJob, hung, inflight, listed, MNT, nbdkit, nothingLeft, scratch, sh, sleep, socketServer, stopServer, waitFor, type AddedDevice } from './helpers.js';

afterEach(delAll);

const VERIFY = `--ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k ${FIO_VERIFY}`;

/**
 * fio's verification at QD64 on the device: zero errors, and every byte written was read back.
 * With `queues` 2, one job per CPU: each CPU's requests go to its own hardware queue, so both connections
 * work; each job verifies `mb` MB of its own 64 MB range.
 */
function fioVerify(dev: string, mb: number, queues = 1): void {
  const split = ['--numjobs=2', '--offset_increment=64M', '--cpus_allowed=0-1', '--cpus_allowed_policy=split', '--group_reporting'];
  const r = spawnSync('fio', ['--name=v', `--filename=${dev}`, ...VERIFY.split(' '), '--iodepth=64', `--size=${mb}M`, '--output-format=json',
    ...(queues === 2 ? split : [])], { encoding: 'utf8', timeout: 600_000 });
  const stderr = r.stderr.split('\n').slice(0, 5).join('\n');
  if (!r.stdout.includes('{')) throw new Error(`fio failed (${r.status}): ${stderr}`);
  const job = fioJob(r.stdout);
  expect(job.error, stderr).toBe(0);
  expect(job.read.io_bytes).toBe(queues * mb * 2 ** 20);
}

/** qemu-nbd serving a new qcow2 image of `size` in `dir` (`extra`: e.g. an export name). */
function qemuNbd(dir: string, sock: string, size: string, extra: string[] = []): Promise<ChildProcess> {
  sh(`qemu-img create -q -f qcow2 ${dir}/disk.qcow2 ${size}`);
  return socketServer('qemu-nbd', ['-t', '-k', sock, '-f', 'qcow2', ...extra, `${dir}/disk.qcow2`], sock);
}

describe('nbd over nbdkit memory', () => {
  it('negotiates the export (size, flags, block sizes) and shows the connection in list --json', async () => {
    const sock = path.join(scratch('nbd-list'), 'nbd.sock');
    await nbdkit(sock, 'memory', '256M');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    expect(dev.size).toBe(256 << 20);
    const info = listed(dev.id).info;
    expect(info).toMatchObject({ endpoint: `unix:${sock}`, export: '', state: 'connected', connections: 1, replies: 'simple', handshake: 'NBD_OPT_GO' });
    expect(['fixed', 'copy']).toContain(info.send);
    const blk = path.basename(dev.blockDevice);
    // nbdkit's memory plugin takes FLUSH, FUA, TRIM and WRITE_ZEROES: a write cache with FUA, and discard.
    expect(sh(`cat /sys/block/${blk}/queue/write_cache`).trim()).toBe('write back');
    expect(Number(sh(`cat /sys/block/${blk}/queue/discard_max_bytes`))).toBeGreaterThan(0);
    expect(Number(sh(`cat /sys/block/${blk}/queue/write_zeroes_max_bytes`))).toBeGreaterThan(0);
  });

  describe.each([
    { mode: 'auto-lease', send: 'auto' },
    { mode: 'auto-lease', send: 'copy' },
    { mode: 'lease', send: 'auto' },
    { mode: 'user-copy', send: 'auto' },
    { mode: 'copy', send: 'auto' },
  ])('data mode $mode, --send $send', ({ mode, send }) => {
    it('passes fio verify=crc32c (4k-256k, QD64, two queues) with zero errors', async () => {
      const sock = path.join(scratch(`nbd-${mode}-${send}`), 'nbd.sock');
      await nbdkit(sock, 'memory', '256M');
      const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '2', '--data-mode', mode, '--send', send);
      expect(dev.mode).toBe(mode);
      const t0 = Date.now();
      fioVerify(dev.blockDevice, 24, 2);
      console.log(`nbd ${mode} --send ${send}: fio verify of 2 x 24M took ${Date.now() - t0} ms`);
      // Discard and write-zeroes reach the server: zeroed blocks read back as zeroes.
      sh(`blkdiscard -z -o 1M -l 1M ${dev.blockDevice}`);
      expect(sh(`dd if=${dev.blockDevice} bs=1M skip=1 count=1 iflag=direct status=none | tr -d '\\0' | wc -c`).trim()).toBe('0');
    });
  });
});

/** An export of 512 MB behind a unix socket: nbdkit's memory plugin, or qemu-nbd serving a qcow2 image. */
const exports512 = [
  { server: 'nbdkit memory', start: (_dir: string, sock: string) => nbdkit(sock, 'memory', '512M') },
  {
    server: 'qemu-nbd qcow2',
    start: (dir: string, sock: string) => qemuNbd(dir, sock, '512M'),
  },
];

describe.each(exports512)('ext4 over $server', ({ server: name, start }) => {
  it('40 MB of files keep their checksums across del and re-add; fsck is clean', async () => {
    const dir = scratch(`nbd-ext4-${name.replace(/ /g, '-')}`);
    const sock = path.join(dir, 'nbd.sock');
    await start(dir, sock);
    let dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`for i in $(seq 1 10); do head -c 4M /dev/urandom > ${MNT}/f$i; done && cd ${MNT} && sha256sum f* > ${dir}/sums && cd / && umount ${MNT}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    sh(`mount ${dev.blockDevice} ${MNT} && cd ${MNT} && sha256sum -c --quiet ${dir}/sums && cd / && umount ${MNT}`);
    sh(`fsck.ext4 -n -f ${dev.blockDevice}`);
  });
});

describe('connections', () => {
  it('NBD_FLAG_CAN_MULTI_CONN: one connection per queue, each serving its queue; fio verify on 2 queues at QD64', async () => {
    const dir = scratch('nbd-multi');
    const sock = path.join(dir, 'nbd.sock');
    const log = path.join(dir, 'nbdkit.log');
    await nbdkit(sock, '--filter=log', 'memory', '256M', `logfile=${log}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '2');
    expect(listed(dev.id).info).toMatchObject({ multiConn: true, connections: 2, state: 'connected' });
    fioVerify(dev.blockDevice, 32, 2);
    const text = fs.readFileSync(log, 'utf8');
    const serving = new Set([...text.matchAll(/connection=(\d+) (?:Read|Write)/g)].map((m) => m[1]));
    console.log(`nbdkit saw ${[...text.matchAll(/Connect /g)].length} connections; ${serving.size} carried reads and writes`);
    expect(serving.size).toBe(2);
  });

  it('an export without NBD_FLAG_CAN_MULTI_CONN refuses --queues 2 in one line and leaves no device', async () => {
    const dir = scratch('nbd-single');
    const sock = path.join(dir, 'nbd.sock');
    await qemuNbd(dir, sock, '64M');
    const r = cli('add', '--target', 'nbd', '--socket', sock, '--queues', '2');
    failedInOneLine(r);
    console.log(`no multi-conn: ${r.stderr.trim()}`);
    await nothingLeft();
  });
});

describe('nbd over qemu-nbd', () => {
  it('serves a qcow2 image: fio verify=crc32c with zero errors', async () => {
    const dir = scratch('nbd-qemu');
    const sock = path.join(dir, 'nbd.sock');
    await qemuNbd(dir, sock, '256M', ['-x', 'disk']);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--export', 'disk', '--queues', '1');
    expect(dev.size).toBe(256 << 20);
    fioVerify(dev.blockDevice, 32);
  });
});

describe('nbd over TCP', () => {
  it('--send zc: write payloads leave by SEND_ZC from the lease; fio verify=crc32c (QD64, two queues) with zero errors', async () => {
    const dir = scratch('nbd-tcp');
    const port = 10809 + Math.floor(Math.random() * 1000);
    sh('ip link set lo up'); // the guest brings up no network of its own
    const srv = spawn('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'memory', '256M'], { stdio: 'ignore' });
    onTestFinished(() => {
      srv.kill('SIGKILL');
    });
    await waitFor('nbdkit on TCP', () => spawnSync('bash', ['-c', `echo > /dev/tcp/127.0.0.1/${port}`]).status === 0, 20_000);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--host', '127.0.0.1', '--port', String(port), '--queues', '2', '--send', 'zc');
    const info = listed(dev.id).info;
    expect(info).toMatchObject({ endpoint: `127.0.0.1:${port}`, send: 'zc', state: 'connected', connections: 2 });
    fioVerify(dev.blockDevice, 16, 2);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('exports that are not what they seem', () => {
  it('a read-only export makes a read-only device that refuses writes', async () => {
    const sock = path.join(scratch('nbd-ro'), 'nbd.sock');
    await nbdkit(sock, '-r', 'memory', '64M');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    expect(listed(dev.id).info.readOnly).toBe(true);
    expect(sh(`cat /sys/block/${path.basename(dev.blockDevice)}/ro`).trim()).toBe('1');
    sh(`dd if=${dev.blockDevice} of=/dev/null bs=1M count=4 iflag=direct status=none`);
    expect(() => sh(`dd if=/dev/zero of=${dev.blockDevice} bs=4k count=1 oflag=direct status=none 2>/dev/null`)).toThrow();
  });

  it('an export that does not exist fails add in one line and leaves no device', async () => {
    const sock = path.join(scratch('nbd-noexport'), 'nbd.sock');
    await nbdkit(sock, '--filter=exportname', 'memory', '64M', 'exportname-strict=true', 'exportname=disk', 'default-export=disk');
    const r = cli('add', '--target', 'nbd', '--socket', sock, '--export', 'nope', '--queues', '1');
    failedInOneLine(r);
    console.log(`missing export: ${r.stderr.trim()}`);
    expect(r.stderr).toMatch(/no export named "nope"/);
    await nothingLeft();
  });

  it('a listener that is not an NBD server fails add in one line and leaves no device', async () => {
    const dir = scratch('nbd-garbage');
    const sock = path.join(dir, 'http.sock');
    await socketServer(process.execPath, ['-e', `require('net').createServer((s) => { s.on('error', () => {}); s.end('HTTP/1.0 400 Bad Request\\r\\n\\r\\n'); }).listen(${JSON.stringify(sock)})`], sock);
    const r = cli('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    failedInOneLine(r);
    console.log(`not an NBD server: ${r.stderr.trim()}`);
    expect(r.stderr).toMatch(/not an NBD server/);
    await nothingLeft();
  });
});

describe('a server that goes away', () => {
  it('killed under fio: fio gets I/O errors within --timeout, nothing hangs, del works', async () => {
    const sock = path.join(scratch('nbd-kill'), 'nbd.sock');
    const srv = await nbdkit(sock, 'memory', '256M');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--timeout', '5');
    const fio = fioInBackground(['--name=k', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw',
      '--bs=4k', '--iodepth=32', '--size=64M', '--time_based', '--runtime=120']);
    await sleep(3000);
    const t0 = Date.now();
    srv.kill('SIGKILL');
    const code = await hung(fio.exit, 30_000);
    console.log(`fio ended ${Date.now() - t0} ms after the server was killed`);
    expect(code).not.toBe('hung');
    expect(fio.output()).toMatch(/error/i);
    await waitFor('state disconnected', () => listed(dev.id).info.state === 'disconnected', 5_000);
    // New IO fails at once rather than waiting.
    expect(() => sh(`dd if=${dev.blockDevice} of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null`, 20_000)).toThrow();
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
  });

  it('hung (SIGSTOP) under fio: requests fail with EIO within --timeout, del works', async () => {
    const sock = path.join(scratch('nbd-hang'), 'nbd.sock');
    const srv = await nbdkit(sock, 'memory', '256M');
    onTestFinished(() => {
      srv.kill('SIGCONT');
    });
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--timeout', '3');
    const fio = fioInBackground(['--name=h', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randread',
      '--bs=4k', '--iodepth=32', '--size=64M', '--time_based', '--runtime=120']);
    await sleep(3000);
    const t0 = Date.now();
    srv.kill('SIGSTOP');
    const code = await hung(fio.exit, 30_000);
    console.log(`fio ended ${Date.now() - t0} ms after the server was stopped (--timeout 3)`);
    expect(code).not.toBe('hung');
    expect(fio.output()).toMatch(/error/i);
    await waitFor('lastError', () => /no reply within --timeout/.test(String(listed(dev.id).info.lastError)), 5_000);
    const d0 = Date.now();
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    expect(Date.now() - d0).toBeLessThan(15_000);
    await nothingLeft();
  });

  it('--reconnect: a server restarted under fio lets IO resume, and verify finds zero errors', async () => {
    const dir = scratch('nbd-reconnect');
    const sock = path.join(dir, 'nbd.sock');
    // A file, not memory: the data must outlive the server.
    sh(`truncate -s 128M ${dir}/disk.img`);
    const args = ['file', `${dir}/disk.img`];
    let srv = await nbdkit(sock, ...args);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--reconnect', '20', '--timeout', '30');
    const fio = fioInBackground(['--name=r', `--filename=${dev.blockDevice}`, ...VERIFY.split(' '), '--iodepth=32', '--size=128M',
      '--output-format=json']);
    let done = false;
    void fio.exit.then(() => (done = true));
    await sleep(2000);
    expect(done).toBe(false); // the restart must fall in the middle of the run
    srv.kill('SIGKILL');
    await sleep(1000);
    srv = await nbdkit(sock, ...args);
    const code = await hung(fio.exit, 240_000);
    expect(code).toBe(0);
    const job = fioJob(fio.output());
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBe(128 << 20);
    // The record follows the server's status once a second.
    await waitFor('state connected', () => listed(dev.id).info.state === 'connected', 10_000);
    const info = listed(dev.id).info;
    expect(info.reconnects).toBeGreaterThanOrEqual(1);
  });
});

describe('defaults, as a new user runs them', () => {
  it('add without --queues against qemu-nbd (no NBD_FLAG_CAN_MULTI_CONN) makes one connection; fio verify with zero errors', async () => {
    const dir = scratch('nbd-default-qemu');
    const sock = path.join(dir, 'q.sock');
    await qemuNbd(dir, sock, '64M');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock);
    expect(dev.queues).toBe(1);
    expect(listed(dev.id).info).toMatchObject({ multiConn: false, connections: 1 });
    fioVerify(dev.blockDevice, 16);
  });

  it('add without --queues against nbd-server (Debian\'s, from a config file) serves fio verify with zero errors', async () => {
    const dir = scratch('nbd-default-nbd-server');
    const sock = path.join(dir, 'n.sock');
    sh(`truncate -s 64M ${dir}/disk.img`);
    fs.writeFileSync(`${dir}/config`, `[generic]\nunixsock = ${sock}\n[disk]\nexportname = ${dir}/disk.img\nflush = true\nfua = true\n`);
    await socketServer('nbd-server', ['-d', '-C', `${dir}/config`], sock);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--export', 'disk');
    expect(dev.queues).toBe(1);
    fioVerify(dev.blockDevice, 16);
  });
});

describe('durability across a reconnect', () => {
  it('--reconnect: a write acknowledged into nbdkit\'s writeback cache, the server killed and restarted: the next fsync fails with EIO', async () => {
    const dir = scratch('nbd-flush-loss');
    const sock = path.join(dir, 'nbd.sock');
    sh(`truncate -s 64M ${dir}/disk.img && head -c 4096 /dev/urandom > ${dir}/block`);
    const args = ['--filter=cache', 'file', `${dir}/disk.img`, 'cache=writeback'];
    let srv = await nbdkit(sock, ...args);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--reconnect', '20', '--timeout', '30');
    sh(`dd if=${dir}/block of=${dev.blockDevice} bs=4k seek=16 oflag=direct conv=notrunc status=none`);
    await stopServer(srv);
    srv = await nbdkit(sock, ...args);
    await waitFor('reconnected', () => listed(dev.id).info.state === 'connected' && Number(listed(dev.id).info.reconnects) >= 1, 20_000);
    // The write really is gone: the killed server held it in its cache only.
    expect(sh(`dd if=${dev.blockDevice} bs=4k skip=16 count=1 iflag=direct status=none | cmp -s - ${dir}/block; echo $?`).trim()).toBe('1');
    const fd = fs.openSync(dev.blockDevice, 'r+');
    try {
      expect(() => fs.fsyncSync(fd)).toThrow(/EIO/);
      fs.fsyncSync(fd); // reported once, as a failed writeback is
    } finally {
      fs.closeSync(fd);
    }
  });
});

/**
 * A server that breaks the protocol on purpose: a READ at TRAP is answered, once a READ at VICTIM waits too,
 * by an error reply that carries a payload, and that payload begins with what a careless client takes for
 * the victim's reply (the victim's cookie without its top 16 bits, which is what it would be with no salt),
 * followed by 0xee bytes. Everything else is served from memory.
 */
const LYING_SERVER = `
const net = require('net');
const [sock, TRAP, VICTIM] = [process.argv[1], 4 << 20, 5 << 20];
const SIZE = 16 << 20, disk = Buffer.alloc(SIZE);
net.createServer((s) => {
  s.on('error', () => {});
  let buf = Buffer.alloc(0), stage = 0, trapped = null;
  s.write(Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT'), Buffer.from([0, 2])]));
  const reply = (cookie, err, payload) => {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(0x67446698, 0);
    h.writeUInt32BE(err, 4);
    cookie.copy(h, 8);
    s.write(payload ? Buffer.concat([h, payload]) : h);
  };
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (stage === 0) {
        if (buf.length < 4) return;
        buf = buf.subarray(4);
        stage = 1;
      } else if (stage === 1) {
        if (buf.length < 16 || buf.length < 16 + buf.readUInt32BE(12)) return;
        buf = buf.subarray(16 + buf.readUInt32BE(12));
        const r = Buffer.alloc(10);
        r.writeBigUInt64BE(BigInt(SIZE), 0);
        r.writeUInt16BE(1, 8);
        s.write(r);
        stage = 2;
      } else {
        if (buf.length < 28) return;
        const type = buf.readUInt16BE(6), cookie = Buffer.from(buf.subarray(8, 16));
        const off = Number(buf.readBigUInt64BE(16)), len = buf.readUInt32BE(24), wlen = type === 1 ? len : 0;
        if (buf.length < 28 + wlen) return;
        const data = buf.subarray(28, 28 + wlen);
        buf = buf.subarray(28 + wlen);
        if (type === 0 && off === TRAP) {
          trapped = { cookie, len };
        } else if (type === 0 && off === VICTIM && trapped) {
          const p = Buffer.alloc(trapped.len, 0xee);
          p.writeUInt32BE(0x67446698, 0);
          p.writeUInt32BE(0, 4);
          cookie.copy(p, 8);
          p.writeUInt16BE(0, 8);
          reply(trapped.cookie, 5, p);
          trapped = null;
        } else if (type === 0) {
          reply(cookie, 0, disk.subarray(off, off + len));
        } else if (type === 1) {
          data.copy(disk, off);
          reply(cookie, 0);
        } else if (type === 2) {
          s.end();
          return;
        } else {
          reply(cookie, 0);
        }
      }
    }
  });
}).listen(sock);
`;

/** A command's exit code and stdout, without blocking the test's event loop. */
function run(cmd: string, args: string[]): Promise<{ code: number | null; out: Buffer }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    const out: Buffer[] = [];
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.on('close', (code) => resolve({ code, out: Buffer.concat(out) }));
  });
}

describe('a READ error reply that carries a payload', () => {
  it('is never read as the next reply: the read fails, no other read gets its bytes, the connection is dropped', async () => {
    const sock = path.join(scratch('nbd-error-payload'), 'lie.sock');
    await socketServer(process.execPath, ['-e', LYING_SERVER, sock], sock);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--timeout', '5');
    const trap = run('dd', [`if=${dev.blockDevice}`, 'bs=8k', `skip=${(4 << 20) / 8192}`, 'count=1', 'iflag=direct', 'status=none']);
    await sleep(500);
    const victim = await run('dd', [`if=${dev.blockDevice}`, 'bs=4k', `skip=${(5 << 20) / 4096}`, 'count=1', 'iflag=direct', 'status=none']);
    expect((await trap).code).not.toBe(0);
    // The victim fails with the connection, or reads what the server holds (zeroes): never the payload's bytes.
    expect(victim.out.includes(0xee)).toBe(false);
    await waitFor('lastError', () => /unknown cookie|bad magic/.test(String(listed(dev.id).info.lastError)), 5_000);
  });
});

describe('teardown', () => {
  it('del while reads wait on a slow server (nbdkit delay): requests in flight at del, del is prompt, the engine logs no error', async () => {
    const sock = path.join(scratch('nbd-del-slow'), 'nbd.sock');
    await nbdkit(sock, '--filter=delay', 'memory', '64M', 'rdelay=300ms', 'wdelay=300ms');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1', '--data-mode', 'auto-lease');
    const fio = fioInBackground(['--name=d', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw',
      '--bs=4k', '--iodepth=64', '--size=64M', '--time_based', '--runtime=60']);
    await sleep(2000);
    const [reads, writes] = inflight(dev.id);
    expect(reads + writes).toBeGreaterThan(0);
    const t0 = Date.now();
    expect(cli('del', '--force', '-n', String(dev.id)).status).toBe(0); // fio still has it open
    console.log(`del with ${reads + writes} requests in flight took ${Date.now() - t0} ms`);
    expect(Date.now() - t0).toBeLessThan(5_000);
    await fio.exit;
    await nothingLeft();
    const log = fs.readFileSync(dev.log, 'utf8');
    expect(log).not.toMatch(/uncovered|refused|still in flight|UNREGISTER/);
  });
});
