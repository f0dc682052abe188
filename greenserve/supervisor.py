"""The pre-fork master: keeps N workers running on shared listeners; knows nothing of HTTP.

The master is plain Python: no gevent, no monkey-patching, no application (except with
--preload, where the entry point patches and loads the app before handing over; the same
loop then runs on gevent's cooperative ``select``). It is given bound sockets and a
``boot`` function, forks workers that run ``boot`` (which patches, loads the app afresh and
serves), and spends its life in one ``select`` loop: signal handlers only queue the signal,
and the loop acts on it.

Each worker has a pipe to the master and writes short messages on it (``ipc``): that is
how the master learns that a worker has loaded the app, that its hub is still running
(``--timeout``), and that it wants to be replaced (``--max-requests``).

Workers live in *slots* 0..N-1. A slot is replaced worker by worker: a reload (SIGHUP) or
a worker that asks to retire marks the slot's worker *outdated*; a new worker is forked
for the slot, and the outdated one is told to drain only once the new one has booted. The
listening sockets stay open in the master the whole time, so the kernel queues new
connections while workers come and go: none is refused. With ``--reuse-port`` each slot
has its own set of ``SO_REUSEPORT`` sockets, shared by the old and new worker of the slot.

Stopping is the opposite: the master closes its listening sockets as soon as it tells the
workers to stop, and each worker closes its own when it stops accepting. The kernel then
refuses new connections at once (a load balancer retries a refused connection elsewhere)
instead of queueing them for nobody and resetting them when the last process exits.
"""

import errno
import gc
import os
import select
import signal
import sys
import time
import traceback

from . import ipc
from .balance import LoadTable
from .errors import AppLoadError, ConfigError
from .log import error_log
from .reload import syntax_errors

BOOT_ERROR = 3  # a worker's exit status when the app cannot be loaded (as gunicorn's)

TICK = 0.25            # the loop wakes at least this often (timeouts, back-off)
FAST_STOP_WAIT = 2.0   # after SIGQUIT, workers still alive this long later are killed
DUMP_WAIT = 2.0        # after SIGABRT, how long a blocked worker has to log its stacks
SHORT_LIFE = 1.0       # a worker dying younger than this (or unbooted) failed to start
GIVE_UP_AFTER = 5      # workers in a row dying unbooted, none ever booted: the master exits
MAX_BACKOFF = 30.0


class WorkerInfo:
    """What a worker is told about itself: its slot, its ``ipc.Writer`` to the master
    (``channel``), the master's pid and the worker count."""

    __slots__ = ("slot", "channel", "master_pid", "workers", "stats", "load")

    def __init__(self, slot, channel, master_pid, workers, stats=None, load=None):
        self.slot, self.channel, self.master_pid, self.workers = (
            slot, channel, master_pid, workers)
        self.stats = stats  # the worker's metrics.RequestStats, or None
        self.load = load    # its balance.WorkerLoad on the shared listeners, or None


class Worker:
    """The master's record of one child process."""

    __slots__ = ("pid", "slot", "channel", "started", "last_beat", "booted", "outdated",
                 "stop_signal", "aborted", "dumped", "reason", "load_index")

    def __init__(self, pid, slot, channel, load_index=None):
        self.pid, self.slot = pid, slot
        self.load_index = load_index  # its entry in the LoadTable
        self.channel = channel   # the ipc.Reader of its pipe
        self.started = self.last_beat = time.monotonic()
        self.booted = False
        self.outdated = False    # to be replaced: it drains once its successor has booted
        self.stop_signal = None  # the signal we sent to end it, if we did
        self.aborted = 0.0       # when SIGABRT was sent because its hub was blocked
        self.dumped = False
        self.reason = None       # the worker's own one-line reason for failing to boot

    @property
    def current(self):
        """Counts towards the slot being filled: not outdated, not being stopped."""
        return not self.outdated and self.stop_signal is None


class Supervisor:
    """Forks ``config.workers`` workers running ``boot(sockets, WorkerInfo)``; see module doc.

    ``boot`` runs in the child and returns its exit status. It sends ``ipc.BOOTED`` on
    ``WorkerInfo.channel`` once it accepts connections, heartbeats while it runs when
    ``config.timeout`` is set, and stops on SIGTERM (gracefully) or SIGQUIT (at once). When
    the app cannot be loaded it sends ``ipc.ERROR`` with the reason and returns
    ``BOOT_ERROR``. ``run()`` returns the master's exit status, or raises ``AppLoadError``
    when no worker could load the app at start-up, or workers keep dying before they boot
    and none ever did (rather than forking for ever).

    ``keep_listening`` are sockets among ``sockets`` that stay open until the master exits
    (systemd's, from socket activation: systemd holds them and hands what queues there to
    the next start, so our copy is not ours to close early).

    ``on_ready()`` is called once, when every slot first has a booted worker (the
    ``when_ready`` hook); if it raises, the workers are stopped at once and ``run()``
    raises it. ``reloader`` (a ``reload.Reloader``, for --reload) reports changed files:
    they are checked for syntax errors and, if they compile, every worker is replaced as on
    SIGHUP (a new worker that cannot load the app leaves the old one serving).
    """

    def __init__(self, config, sockets, boot, keep_listening=(), on_ready=None,
                 reloader=None, monitor=None, health=None, admin=None):
        self.config = config
        self.count = config.workers
        self.sockets = list(sockets)
        self.boot = boot
        self.keep_listening = list(keep_listening)
        self.workers = {}          # pid -> Worker
        self.slots = {}            # slot -> its sockets (the same list unless --reuse-port)
        self.signals = []          # appended to by the handlers, emptied by the loop
        self.ever_booted = False   # once a worker has booted, boot errors no longer halt
        self.failures = 0          # consecutive start-up failures, for the back-off
        self.spawn_after = 0.0     # monotonic time before which no worker is forked
        self.stop_deadline = None  # set once stopping: kill what is left after it
        self.listening = True      # until stopping closes the master's listeners
        self.exit_code = 0
        self.monitor = monitor  # metrics.Supervision: worker slots and lifecycle counters
        self.health = health    # admin.Health: what /healthz and /readyz answer
        self.admin = admin      # admin.AdminThread: its descriptors are closed in workers
        self.on_ready = on_ready
        self.ready = False         # every slot has had a booted worker (on_ready was called)
        self.reloader = reloader
        self.loads = None  # balance.LoadTable: workers' connection counts (shared listeners)
        self._wake_r = self._wake_w = None

    # -- the loop ------------------------------------------------------------------------

    def run(self):
        """Fork the workers and supervise them until told to stop; the exit status."""
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        if not self.config.reuse_port:  # with it, the kernel spreads connections itself
            self.loads = LoadTable()
        previous = {signum: signal.signal(signum, self._queue) for signum in HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            if self.reloader is not None:
                self.reloader.start(self._wake)
                error_log.info("--reload: watching %s for changes",
                               ", ".join(self.reloader.roots))
            error_log.info("master (pid %d) starting %d worker(s)", os.getpid(), self.count)
            while True:
                if self.health is not None:
                    self.health.beat()
                self._reap()
                self._act_on_signals()
                self._check_reload()
                if self.stop_deadline is not None:
                    if not self.workers:
                        error_log.info("master (pid %d) stopped", os.getpid())
                        return self.exit_code
                    self._enforce_stop_deadline()
                else:
                    self._check_liveness()
                    self._fill_slots()
                    self._retire_replaced()
                self._wait()
        finally:
            if self.reloader is not None:
                self.reloader.stop()
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for worker in list(self.workers.values()):
                self._kill(worker, signal.SIGKILL)  # only on an error in the master itself
            self._close_channels()

    def _queue(self, signum, frame):
        # Only queue: the loop acts on it (set_wakeup_fd wakes the select up).
        self.signals.append(signum)

    def _wake(self):
        """Wake the loop up from another thread (the --reload watcher)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError, TypeError):
            pass  # already awake (full pipe), or stopped (closed)

    def _wait(self):
        """Sleep until a signal, a worker's message or the next tick; read the messages."""
        timeout = TICK
        if self.spawn_after > time.monotonic():
            timeout = min(timeout, self.spawn_after - time.monotonic())
        by_fd = {worker.channel.fd: worker for worker in self.workers.values()
                 if not worker.channel.closed}
        try:
            readable, _, _ = select.select([self._wake_r, *by_fd], [], [], timeout)
        except OSError as exc:  # EINTR is retried by Python; anything else is a bug
            if exc.errno != errno.EBADF:
                raise
            readable = []
        if self._wake_r in readable:
            _drain(self._wake_r)
        for fd in readable:
            if fd in by_fd:
                self._read(by_fd[fd])

    # -- messages from workers -------------------------------------------------------------

    def _read(self, worker):
        """Act on what the worker wrote. Its end closed means it is exiting (see _reap)."""
        messages = worker.channel.read()
        if messages:
            worker.last_beat = time.monotonic()  # any message proves the hub ran
        for kind, reason in messages:
            if kind == ipc.BOOTED:
                worker.booted = self.ever_booted = True
                error_log.info("worker %d (pid %d) booted", worker.slot, worker.pid)
                if self.monitor is not None:
                    self.monitor.booted(worker.pid)
                self._ready_if_all_served()
                self._check_ready()
            elif kind == ipc.RETIRE and not worker.outdated:
                worker.outdated = True
                error_log.info("worker (pid %d) served its --max-requests; starting its "
                               "replacement", worker.pid)
            elif kind == ipc.DUMPED:
                worker.dumped = True
            elif kind == ipc.ERROR:
                worker.reason = reason

    def _ready_if_all_served(self):
        """/readyz answers ready again once every slot has a current, booted worker."""
        if self.health is not None and self.stop_deadline is None and all(
                any(w.slot == slot and w.current and w.booted
                    for w in self.workers.values()) for slot in range(self.count)):
            self.health.set_ready()

    # -- signals ---------------------------------------------------------------------------

    def _act_on_signals(self):
        """Call ``handle_<name>`` for each queued signal, in the order they came."""
        while self.signals:
            signum = self.signals.pop(0)
            getattr(self, handler_name(signum))(signum)

    def handle_chld(self, signum):
        pass  # it woke the loop up; _reap does the work

    def handle_term(self, signum):
        """Graceful stop; a second TERM or INT stops at once (exit status 1)."""
        name = signal.Signals(signum).name
        if self.health is not None:
            self.health.set_draining()  # before any connection is closed
        if self.stop_deadline is None:
            error_log.info("%s received; stopping %d worker(s) gracefully (up to %gs)",
                           name, len(self.workers), self.config.graceful_timeout)
            self._stop_all(fast=False)
        else:
            error_log.warning("second signal (%s) received; stopping every worker at once",
                              name)
            self.exit_code = 1
            self._stop_all(fast=True)

    handle_int = handle_term

    def handle_quit(self, signum):
        if self.health is not None:
            self.health.set_draining()
        error_log.info("SIGQUIT received; stopping every worker at once")
        self._stop_all(fast=True)

    def handle_usr1(self, signum):
        """Reopen the log files (logrotate), here and in every worker."""
        from .log import reopen_log_files
        error_log.info("SIGUSR1 received; reopening log files")
        for problem in reopen_log_files():
            error_log.warning("%s", problem)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def handle_usr2(self, signum):
        # gunicorn's binary upgrade: not supported, and it must not kill the master.
        error_log.info("SIGUSR2 ignored: SIGHUP reloads the app")

    def handle_hup(self, signum):
        """Reload: every worker is replaced by one that loads the app afresh."""
        if self._ignored_while_stopping(signum):
            return
        if self.config.preload:
            # gunicorn's surprise, said out loud: forked from the master, new workers run
            # the code the master loaded at start-up.
            error_log.warning("SIGHUP received; with --preload the app was loaded once in the "
                              "master: %d new worker(s) start from it, so code changes are "
                              "NOT picked up (restart greenserve for that)", self.count)
            self._replace_all()
            return
        self.reload("SIGHUP received")

    def reload(self, reason):
        """Replace every worker by one that loads the app afresh; the old ones drain once
        their successors have booted."""
        error_log.info("%s; reloading: %d new worker(s) load the app, then the old ones "
                       "drain", reason, self.count)
        self._replace_all()

    def _replace_all(self):
        for worker in list(self.workers.values()):
            if not worker.booted and worker.stop_signal is None:
                self._read_all(worker)  # its BOOTED may be waiting in the pipe
        if self.health is not None:
            self.health.set_unready("reloading")
        for worker in list(self.workers.values()):
            if worker.stop_signal is not None:
                continue
            if worker.booted:
                worker.outdated = True
                continue
            # Still loading the app (started by an earlier reload, or at start-up): it has
            # served nothing, and the worker about to start for its slot supersedes it.
            # Stopped now, or every reload in a row would add a whole set of workers
            # loading at once (memory, CPU taken from the ones that serve).
            error_log.info("stopping worker (pid %d): still loading the app, superseded by "
                           "the reload", worker.pid)
            self._stop(worker, fast=False)
        self.failures, self.spawn_after = 0, 0.0

    def handle_ttin(self, signum):
        if self._ignored_while_stopping(signum):
            return
        self.count += 1
        error_log.info("SIGTTIN received; %d worker(s) now", self.count)

    def handle_ttou(self, signum):
        if self._ignored_while_stopping(signum):
            return
        if self.count > 1:
            self.count -= 1
            error_log.info("SIGTTOU received; %d worker(s) now", self.count)
        else:
            error_log.info("SIGTTOU ignored: one worker is the minimum")

    def _ignored_while_stopping(self, signum):
        """While stopping, signals that would start workers are refused (and said so)."""
        if self.stop_deadline is None:
            return False
        error_log.info("%s ignored: stopping", signal.Signals(signum).name)
        return True

    # -- --reload and when_ready ----------------------------------------------------------------

    def _check_reload(self):
        """Reload when the watched files changed and the Python ones among them compile."""
        if self.reloader is None:
            return
        if self.reloader.error is not None:
            error_log.error("--reload: %s; files are no longer watched", self.reloader.error)
            self.reloader = None
            return
        changed = self.reloader.take()
        if not changed or self.stop_deadline is not None:
            return
        shown = ", ".join(os.path.relpath(path) for path in changed[:3])
        if len(changed) > 3:
            shown += f" and {len(changed) - 3} more"
        problems = syntax_errors(changed)
        if problems:
            for line in problems:
                error_log.error("%s", line)
            error_log.error("not reloading after changes to %s: the workers keep the code "
                            "they loaded until the file is fixed", shown)
            return
        self.reload(f"changed: {shown}")

    def _check_ready(self):
        """Call on_ready once every slot has had a booted worker."""
        if self.ready or not all(
                any(w.slot == slot and w.booted for w in self.workers.values())
                for slot in range(self.count)):
            return
        self.ready = True
        if self.on_ready is None:
            return
        try:
            self.on_ready()
        except BaseException:
            self._stop_all(fast=True)
            self._reap_all()
            raise

    # -- keeping the slots filled -------------------------------------------------------------

    def _fill_slots(self):
        """Fork a worker for every slot without a current one (unless backing off)."""
        for slot in range(self.count):
            if time.monotonic() < self.spawn_after:
                return
            if not any(w.slot == slot and w.current for w in self.workers.values()):
                self._spawn(slot)
        self.spawn_after = 0.0

    def _retire_replaced(self):
        """Stop workers whose slot is gone (TTOU) or whose successor has booted."""
        for worker in list(self.workers.values()):
            if worker.stop_signal is not None:
                continue
            if worker.slot >= self.count:
                error_log.info("stopping worker (pid %d): one worker fewer", worker.pid)
                self._stop(worker, fast=False)
                self._release_slot(worker.slot)
            elif worker.outdated and any(
                    other.slot == worker.slot and other.current and other.booted
                    for other in self.workers.values()):
                self._stop(worker, fast=False)

    def _spawn(self, slot):
        try:
            sockets = self._slot_sockets(slot)
        except ConfigError as exc:
            error_log.error("cannot start a worker: %s", exc)
            self._back_off()
            return
        read_end, write_end = os.pipe()
        index = self.monitor.reserve() if self.monitor is not None else None
        load_index = self.loads.reserve() if self.loads is not None else None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write the buffered text a second time
        # The worker inherits the master's objects frozen: its collections never write to
        # them, so the pages it shares with the master (a --preload app, above all) stay
        # shared. The master unfreezes its own at once and collects as before.
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid == 0:  # the child: never returns into the master's loop
            status = 1
            try:
                os.close(read_end)
                self._become_worker(slot)
                stats = self.monitor.adopt(index) if self.monitor is not None else None
                load = self.loads.entry(load_index) if self.loads is not None else None
                info = WorkerInfo(slot, ipc.Writer(write_end), os.getppid(), self.count,
                                  stats, load)
                status = self.boot(sockets, info)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                _flush_logs()
                os._exit(status if isinstance(status, int) else 1)
        gc.unfreeze()
        os.close(write_end)
        if self.monitor is not None:
            self.monitor.spawned(pid, index, slot)
        self.workers[pid] = Worker(pid, slot, ipc.Reader(read_end), load_index)
        error_log.info("started worker %d (pid %d)", slot, pid)

    def _become_worker(self, slot):
        """In a fresh child: drop the master's signal handling and descriptors."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        # Ctrl-C and a terminal hangup reach the whole process group: the master decides.
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                       signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.admin is not None:
            self.admin.close()  # the master's threads are not here; their sockets are
        mine = self._slot_sockets(slot)
        for worker in self.workers.values():
            worker.channel.close()
        # Another slot's reuse-port socket held open here would keep getting connections
        # (slot 0's too: the master's own sockets), and would outlive the master's close.
        for sock in self._all_listeners():
            if all(sock is not own for own in mine):
                sock.close()

    def _slot_sockets(self, slot):
        """Slot 0 uses the sockets bound first; with --reuse-port other slots get copies."""
        if not self.config.reuse_port or slot == 0:
            return self.sockets
        if slot not in self.slots:
            from .listeners import reuse_port_copies  # binds sockets, nothing more
            self.slots[slot] = reuse_port_copies(self.sockets, self.config.backlog)
        return self.slots[slot]

    def _all_listeners(self):
        """Every listening socket the master holds: the first set and --reuse-port copies."""
        return [*self.sockets, *(sock for copies in self.slots.values() for sock in copies)]

    def _release_slot(self, slot):
        """Close the master's copies of a removed slot's own sockets (--reuse-port).

        Closed now, each leaves the kernel's reuse-port group as soon as the draining worker
        closes its copy too, instead of collecting connections that nobody accepts.
        """
        for sock in self.slots.pop(slot, ()):
            if all(sock is not own for own in self.sockets):
                sock.close()

    # -- workers that end -------------------------------------------------------------------

    def _reap(self):
        # With --preload the master is monkey-patched: gevent's loop reaps children itself
        # and hands their status to its own os.waitpid, so wait4 would never see them.
        patched = "gevent.monkey" in sys.modules and \
            sys.modules["gevent.monkey"].is_module_patched("os")
        while True:
            try:
                if patched:
                    (pid, status), cpu = os.waitpid(-1, os.WNOHANG), None
                else:
                    pid, status, usage = os.wait4(-1, os.WNOHANG)
                    cpu = usage.ru_utime + usage.ru_stime
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._exited(worker, status, cpu)

    def _exited(self, worker, status, cpu_seconds=None):
        self._read_all(worker)  # its last messages (a boot error's reason) first
        if self.loads is not None:
            self.loads.release(worker.load_index)
        code = os.waitstatus_to_exitcode(status)
        if self.monitor is not None:
            cause = ("timeout" if worker.aborted
                     else "stopped" if worker.stop_signal is not None or
                     self.stop_deadline is not None
                     else "boot_error" if code == BOOT_ERROR else "crashed")
            self.monitor.exited(worker.pid, cause, cpu_seconds)
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0
               else f"exited with status {code}")
        if worker.aborted:
            error_log.error("worker (pid %d) %s after its hub was blocked for over %gs "
                            "(--timeout)", worker.pid, how, self.config.timeout)
            return
        if worker.stop_signal is not None or self.stop_deadline is not None:
            error_log.info("worker (pid %d) %s", worker.pid, how)
            return
        if code == BOOT_ERROR and not worker.booted:
            reason = worker.reason or "the application could not be loaded"
            for other in self.workers.values():  # a BOOTED may be waiting in a pipe
                self._read_all(other)
            if not self.ever_booted:
                # Every worker would fail the same way: stop instead of forking for ever.
                self._give_up(reason)
            if not self._abandon_reload(worker, reason):
                self._back_off()  # nothing serves this slot: try again, less and less often
            return
        lived = time.monotonic() - worker.started
        if not worker.booted or lived < SHORT_LIFE:
            error_log.error("worker (pid %d) %s while starting", worker.pid, how)
            self._back_off()
            if not worker.booted and not self.ever_booted and \
                    self.failures >= GIVE_UP_AFTER:
                # Dying before serving for any reason (a crash in an extension, an exit at
                # import, a killed process) is no better than a load error when no worker
                # has ever booted: stop instead of forking for ever.
                self._give_up(f"{GIVE_UP_AFTER} workers in a row {how} before they could "
                              f"serve, and none ever did")
        else:
            self.failures = 0
            error_log.warning("worker (pid %d) %s; starting a new one", worker.pid, how)

    def _give_up(self, reason):
        self._stop_all(fast=True)
        self._reap_all()
        raise AppLoadError(reason)

    def _abandon_reload(self, failed, reason):
        """A new worker cannot load the app: keep the outdated workers that still serve.
        True if one does (the slot is served; no new attempt until the next reload)."""
        keep = [w for w in self.workers.values() if w.outdated and w.booted
                and w.stop_signal is None and w.slot == failed.slot]
        error_log.error("worker (pid %d) cannot load the app: %s%s", failed.pid, reason,
                        "; the previous worker keeps serving" if keep else "")
        for worker in keep:
            worker.outdated = False
        if keep:
            # The reload is over for this slot; the app is served as before.
            self._ready_if_all_served()
        return bool(keep)

    def _back_off(self):
        self.failures += 1
        delay = 0.0 if self.failures < 2 else min(0.5 * 2 ** (self.failures - 2), MAX_BACKOFF)
        if delay:
            error_log.warning("workers keep failing to start; next attempt in %gs", delay)
        self.spawn_after = time.monotonic() + delay

    # -- liveness -------------------------------------------------------------------------------

    def _check_liveness(self):
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.stop_signal == signal.SIGKILL:
                continue
            if worker.aborted:
                if worker.dumped or now - worker.aborted > DUMP_WAIT:
                    self._kill(worker, signal.SIGKILL)
            elif self.config.timeout and now - worker.last_beat > self.config.timeout:
                what = ("its hub has been blocked" if worker.booted
                        else "it has been loading the app")
                error_log.error("worker (pid %d): %s for %.1fs (--timeout %g); logging its "
                                "stacks, then killing it", worker.pid, what,
                                now - worker.last_beat, self.config.timeout)
                worker.aborted = now
                _signal(worker.pid, signal.SIGABRT)

    # -- stopping -------------------------------------------------------------------------------

    def _stop_all(self, fast):
        wait = FAST_STOP_WAIT if fast else self.config.graceful_timeout + FAST_STOP_WAIT
        deadline = time.monotonic() + wait
        if self.stop_deadline is None or deadline < self.stop_deadline:
            self.stop_deadline = deadline
        for worker in self.workers.values():
            self._stop(worker, fast)
        self._close_listeners()

    def _close_listeners(self):
        """Stop listening for good, so that the kernel refuses new connections.

        Each worker closes its copies when it stops accepting; the socket is gone once the
        last copy is. Kept open, the master's copy would let the kernel queue connections
        that no one accepts, to be reset when the master exits.
        """
        if not self.listening:
            return
        self.listening = False
        closed = 0
        for sock in self._all_listeners():
            if sock.fileno() != -1 and all(sock is not kept for kept in self.keep_listening):
                sock.close()
                closed += 1
        if closed:
            error_log.info("master (pid %d) closed its %d listening socket(s): new "
                           "connections are refused while workers finish", os.getpid(),
                           closed)

    def _stop(self, worker, fast):
        """TERM drains, QUIT exits at once; an unbooted worker has nothing to lose: KILL."""
        signum = (signal.SIGKILL if not worker.booted
                  else signal.SIGQUIT if fast else signal.SIGTERM)
        order = (None, signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL)
        if order.index(signum) > order.index(worker.stop_signal):
            self._kill(worker, signum)

    def _kill(self, worker, signum):
        worker.stop_signal = signum
        _signal(worker.pid, signum)

    def _enforce_stop_deadline(self):
        if time.monotonic() < self.stop_deadline:
            return
        for worker in self.workers.values():
            if worker.stop_signal != signal.SIGKILL:
                error_log.warning("worker (pid %d) still running; killing it", worker.pid)
                self._kill(worker, signal.SIGKILL)
        self.stop_deadline = time.monotonic() + FAST_STOP_WAIT

    def _reap_all(self):
        deadline = time.monotonic() + FAST_STOP_WAIT
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for worker in list(self.workers.values()):
            self._kill(worker, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            self.workers.pop(worker.pid, None)

    def _read_all(self, worker):
        """Everything the worker's pipe still holds (it has exited or is about to)."""
        while not worker.channel.closed:
            self._read(worker)
            if not _readable(worker.channel.fd):
                return

    def _close_channels(self):
        for worker in self.workers.values():
            worker.channel.close()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None


def handler_name(signum):
    """``handle_hup`` for SIGHUP: the Supervisor method that acts on ``signum``."""
    return "handle_" + signal.Signals(signum).name[len("SIG"):].lower()


# The signals the master handles: exactly those it has a handle_<name> method for.
HANDLED = tuple(signum for signum in signal.Signals
                if hasattr(Supervisor, handler_name(signum)))


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone; _reap will see it


def _readable(fd):
    return fd is not None and bool(select.select([fd], [], [], 0)[0])


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _flush_logs():
    import logging
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    logging.shutdown()
