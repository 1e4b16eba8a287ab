// Command flood is the unprivileged writer of the watcher's flood test and
// benchmark (test/watch_flood_test.go). The test runs it as an
// unprivileged uid (SysProcAttr.Credential) and hands it, as fd 3, a
// directory of the booted /etc that the user owns (/etc/svc), so that it
// needs no path to it (the test's directories are 0700 root).
//
// For -duration it loops as fast as it can, each round: creating a file
// under a name from a small cycle (the directory stays small), renaming
// one file over another, exchanging two directories with content (each
// move of a watched directory makes the watcher's watch set doubtful),
// exchanging a directory with a symlink, and making and removing a
// directory. It prints its counts as JSON on stdout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

type counts struct {
	Ops    int            `json:"ops"`
	Errors map[string]int `json:"errors,omitempty"`
	UID    int            `json:"uid"`
}

const svc = 3

func main() {
	dur := flag.Duration("duration", 20*time.Second, "how long to flood")
	flag.Parse()
	c := counts{Errors: map[string]int{}, UID: os.Geteuid()}
	if c.UID == 0 {
		fmt.Fprintln(os.Stderr, "flood: refusing to run as root")
		os.Exit(2)
	}
	unix.Umask(0o022)
	fail := func(what string, err error) {
		if err != nil {
			c.Errors[what+": "+err.Error()]++
		} else {
			c.Ops++
		}
	}
	end := time.Now().Add(*dur)
	for i := 0; time.Now().Before(end); i++ {
		name := "f" + strconv.Itoa(i%64)
		fd, err := unix.Openat(svc, name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			_, err = unix.Write(fd, []byte(strconv.Itoa(i)+"\n"))
			unix.Close(fd)
		}
		fail("create", err)
		fail("rename", unix.Renameat(svc, name, svc, "g"+strconv.Itoa(i%16)))
		fail("exchange dirs", unix.Renameat2(svc, "a", svc, "b", unix.RENAME_EXCHANGE))
		fail("exchange dir and symlink", unix.Renameat2(svc, "d", svc, "dl", unix.RENAME_EXCHANGE))
		fail("mkdir", unix.Mkdirat(svc, "tmp.d", 0o755))
		fail("rmdir", unix.Unlinkat(svc, "tmp.d", unix.AT_REMOVEDIR))
	}
	if len(c.Errors) == 0 {
		c.Errors = nil
	}
	if err := json.NewEncoder(os.Stdout).Encode(c); err != nil {
		os.Exit(1)
	}
}
