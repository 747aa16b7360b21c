package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCompletion checks that each shell's script offers every command and
// every flag of the command table, and runs the bash one in bash.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errs := runMxq(t, "", "completion", sh)
		if code != 0 {
			t.Fatalf("completion %s: exit %d: %s", sh, code, errs)
		}
		for _, cmd := range commands {
			if !strings.Contains(out, cmd.name) {
				t.Errorf("%s: no command %s", sh, cmd.name)
			}
			for _, f := range flagsOf(cmd) {
				want := "--" + f.name
				if sh == "fish" {
					want = "-l " + f.name
				}
				if !strings.Contains(out, want) {
					t.Errorf("%s: no flag %s of %s", sh, want, cmd.name)
				}
			}
		}
		if path, err := exec.LookPath(sh); err == nil {
			c := exec.Command(path, "-n")
			c.Stdin = strings.NewReader(out)
			if b, err := c.CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v: %s", sh, err, b)
			}
		}
	}
	if code, _, _ := runMxq(t, "", "completion", "tcsh"); code != 2 {
		t.Errorf("completion tcsh: exit %d, want 2", code)
	}

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	_, script, _ := runMxq(t, "", "completion", "bash")
	for _, tc := range []struct {
		line string // the words; the last is completed
		want string
	}{
		{"mxq mig", "migrate"},
		{"mxq --queue file:///q migrate --mo", "--move"},
		{"mxq --json hold --rc", "--rcpt"},
		{"mxq ls --ol", "--older-than"},
		{"mxq help st", "stats"},
	} {
		c := exec.Command(bash, "-c", script+`
COMP_WORDS=(`+tc.line+`); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _mxq; echo "${COMPREPLY[*]}"`)
		b, err := c.CombinedOutput()
		if err != nil || strings.TrimSpace(string(b)) != tc.want {
			t.Errorf("%q completes to %q (%v), want %q", tc.line, b, err, tc.want)
		}
	}
}

// TestMan renders the manual page with groff, without warnings, and finds
// every command and flag of the command table in it.
func TestMan(t *testing.T) {
	code, page, errs := runMxq(t, "", "man")
	if code != 0 {
		t.Fatalf("man: exit %d: %s", code, errs)
	}
	for _, cmd := range commands {
		if !strings.Contains(page, `.SS "mxq `+roff(cmd.name)+" ") {
			t.Errorf("no section for %s", cmd.name)
		}
		for _, f := range flagsOf(cmd) {
			if !strings.Contains(page, `\fB\-\-`+strings.ReplaceAll(f.name, "-", `\-`)+`\fR`) {
				t.Errorf("no flag --%s of %s", f.name, cmd.name)
			}
		}
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("no groff")
	}
	c := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	c.Stdin = strings.NewReader(page)
	if b, err := c.CombinedOutput(); err != nil || len(b) > 0 {
		t.Errorf("groff: %v:\n%s", err, b)
	}
}
