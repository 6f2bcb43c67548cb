/* For tests of error paths: runs fn(arg) in a child process and reports whether it exited with
 * the expected status and printed a message containing `needle` (typically the file name).
 * Used by the tokenizer, shard and loader tests. */
#ifndef TESTS_EXPECT_FATAL_H
#define TESTS_EXPECT_FATAL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int expect_fatal(void (*fn)(void *), void *arg, int expected_status, const char *needle) {
    int fds[2];
    if (pipe(fds) != 0) return 0;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        dup2(fds[1], STDOUT_FILENO);
        fn(arg);
        _exit(0); /* returning normally is a failure of the test */
    }
    close(fds[1]);
    char msg[4096];
    size_t used = 0;
    ssize_t got;
    while ((got = read(fds[0], msg + used, sizeof(msg) - 1 - used)) > 0) used += (size_t)got;
    msg[used] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == expected_status && strstr(msg, needle) != NULL;
    if (!ok)
        fprintf(stderr, "expected exit %d with a message naming \"%s\"; got status %d, output: %s\n", expected_status,
                needle, WIFEXITED(status) ? WEXITSTATUS(status) : -1, msg);
    return ok;
}

#endif
