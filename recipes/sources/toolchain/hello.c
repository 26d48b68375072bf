/* A toolchain sanity check: compiled and linked in the sandbox, bit for bit reproducible. */
#include <stdio.h>

int main(void)
{
	printf("MLOS toolchain check: %s\n", __VERSION__);
	return 0;
}
