/* /init of the kernel boot test: reads the MLOS identity, sets the ML scheduling hint, checks
 * that a child inherits it, prints everything on the console, powers off. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

#define PR_SET_MLOS_SCHED_HINT 0x4d4c0001
#define PR_GET_MLOS_SCHED_HINT 0x4d4c0002

static void status_line(const char *who)
{
	char buf[8192];
	int fd = open("/proc/self/status", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	char *line, *end;

	if (n < 0)
		return;
	buf[n] = '\0';
	line = strstr(buf, "MlosSchedHint:");
	if (line) {
		end = strchr(line, '\n');
		if (end)
			*end = '\0';
		printf("MLOS-TEST %s status: %s\n", who, line);
	}
}

int main(void)
{
	char version[64] = "";
	int fd, set, got;
	pid_t child;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	fd = open("/sys/kernel/mlos/version", O_RDONLY);
	if (fd >= 0 && read(fd, version, sizeof(version) - 1) > 0)
		version[strcspn(version, "\n")] = '\0';
	printf("MLOS-TEST version=%s\n", version);
	set = prctl(PR_SET_MLOS_SCHED_HINT, 2, 0, 0, 0);
	got = prctl(PR_GET_MLOS_SCHED_HINT, 0, 0, 0, 0);
	printf("MLOS-TEST parent set=%d get=%d\n", set, got);
	status_line("parent");
	fflush(stdout);
	child = fork();
	if (child == 0) {
		printf("MLOS-TEST child get=%d\n", prctl(PR_GET_MLOS_SCHED_HINT, 0, 0, 0, 0));
		status_line("child");
		fflush(stdout);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	printf("MLOS-TEST invalid=%d\n", prctl(PR_SET_MLOS_SCHED_HINT, 7, 0, 0, 0));
	printf("MLOS-TEST done\n");
	fflush(stdout);
	reboot(RB_POWER_OFF);
	return 0;
}
