/*
 * /init of the kernel-matrix guests (scripts/kernel-matrix.sh). Built with `gcc -static`.
 *
 * Mounts what the tests need (proc, sys, devtmpfs, tmpfs on /tmp and /dev/shm), brings the
 * loopback interface up, then runs every line of /kmatrix/plan:
 *
 *     # comment
 *     env KEY=VALUE                       (set for every program started after this line)
 *     run NAME TIMEOUT_SECS PROGRAM [ARGS...]
 *
 * Each program runs in its own process group with stdout/stderr on the console; a program
 * that is still running after TIMEOUT_SECS is killed with its whole group. Before and after
 * each program one line goes to the console that the host script parses:
 *
 *     KMATRIX BEGIN NAME
 *     KMATRIX RESULT NAME exit=N secs=S        (or signal=N, timeout, exec-failed)
 *
 * then "KMATRIX DONE" and a power-off. Nothing here ever blocks without a bound.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 64
#define MAX_ENV 64

static char *envv[MAX_ENV + 1];
static int envc;

static void say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    /* One write per line, so it is not interleaved with a program's output mid-line. */
    ssize_t w = write(1, buf, n);
    (void)w;
}

static void try_mount(const char *src, const char *dst, const char *type, const char *opts)
{
    mkdir(dst, 0755);
    if (mount(src, dst, type, 0, opts) != 0)
        say("KMATRIX WARN mount %s on %s: %s\n", type, dst, strerror(errno));
}

static void console(void)
{
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2)
        close(fd);
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        say("KMATRIX WARN socket: %s\n", strerror(errno));
        return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
        say("KMATRIX WARN SIOCGIFFLAGS lo: %s\n", strerror(errno));
    } else {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
            say("KMATRIX WARN SIOCSIFFLAGS lo: %s\n", strerror(errno));
    }
    close(s);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void run(char *name, long timeout, char **argv)
{
    say("KMATRIX BEGIN %s\n", name);
    double start = now();
    pid_t pid = fork();
    if (pid < 0) {
        say("KMATRIX RESULT %s exec-failed secs=0 (fork: %s)\n", name, strerror(errno));
        return;
    }
    if (pid == 0) {
        setpgid(0, 0);
        if (chdir("/tmp") != 0)
            _exit(126);
        execve(argv[0], argv, envv);
        say("KMATRIX exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    int status = 0;
    int timed_out = 0;
    for (;;) {
        /* Also reaps orphans re-parented to init; only our child ends the wait. */
        pid_t r = waitpid(-1, &status, WNOHANG);
        if (r == pid)
            break;
        if (r > 0)
            continue;
        if (now() - start > timeout) {
            timed_out = 1;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            /* SIGKILL cannot be ignored; the bound is the kernel's teardown. */
            waitpid(pid, &status, 0);
            break;
        }
        nap_ms(50);
    }
    /* Anything the program left behind in its group goes too. */
    kill(-pid, SIGKILL);
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    double secs = now() - start;
    if (timed_out)
        say("KMATRIX RESULT %s timeout secs=%.1f\n", name, secs);
    else if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        say("KMATRIX RESULT %s exec-failed secs=%.1f\n", name, secs);
    else if (WIFEXITED(status))
        say("KMATRIX RESULT %s exit=%d secs=%.1f\n", name, WEXITSTATUS(status), secs);
    else if (WIFSIGNALED(status))
        say("KMATRIX RESULT %s signal=%d secs=%.1f\n", name, WTERMSIG(status), secs);
    else
        say("KMATRIX RESULT %s unknown secs=%.1f\n", name, secs);
}

static void run_plan(void)
{
    FILE *f = fopen("/kmatrix/plan", "r");
    if (!f) {
        say("KMATRIX WARN no /kmatrix/plan: %s\n", strerror(errno));
        return;
    }
    static char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *words[MAX_ARGS + 4];
        int n = 0;
        for (char *w = strtok(line, " \t"); w && n < MAX_ARGS + 3; w = strtok(NULL, " \t"))
            words[n++] = w;
        words[n] = NULL;
        if (n == 0 || words[0][0] == '#')
            continue;
        if (strcmp(words[0], "env") == 0 && n == 2 && envc < MAX_ENV) {
            envv[envc++] = strdup(words[1]);
            envv[envc] = NULL;
        } else if (strcmp(words[0], "run") == 0 && n >= 4) {
            run(words[1], strtol(words[2], NULL, 10), &words[3]);
        } else {
            say("KMATRIX WARN bad plan line starting with %s\n", words[0]);
        }
    }
    fclose(f);
}

int main(void)
{
    try_mount("devtmpfs", "/dev", "devtmpfs", NULL);
    console();
    try_mount("proc", "/proc", "proc", NULL);
    try_mount("sysfs", "/sys", "sysfs", NULL);
    try_mount("tmpfs", "/tmp", "tmpfs", "mode=1777");
    try_mount("tmpfs", "/dev/shm", "tmpfs", "mode=1777");
    loopback_up();

    /* Root in the guest, but say it anyway: pinned ring memory and many sockets. */
    struct rlimit inf = { RLIM_INFINITY, RLIM_INFINITY };
    setrlimit(RLIMIT_MEMLOCK, &inf);
    struct rlimit files = { 65536, 65536 };
    setrlimit(RLIMIT_NOFILE, &files);

    envv[envc++] = "PATH=/kmatrix:/bin";
    envv[envc++] = "HOME=/tmp";
    envv[envc++] = "TMPDIR=/tmp";
    envv[envc] = NULL;

    struct utsname u;
    if (uname(&u) == 0)
        say("KMATRIX KERNEL %s\n", u.release);
    run_plan();
    say("KMATRIX DONE\n");
    sync();
    reboot(RB_POWER_OFF);
    /* Only reached if power-off failed: a panic (init exiting) ends QEMU via -no-reboot. */
    return 0;
}
