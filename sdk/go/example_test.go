package cocoon_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	cocoon "github.com/cocoon-run/cocoon/sdk/go"
)

// A sandbox, a command and a file. The configuration comes from
// E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL.
func Example() {
	ctx := context.Background()
	c, err := cocoon.NewClient(cocoon.Config{})
	if err != nil {
		log.Fatal(err)
	}
	sb, err := c.Create(ctx, cocoon.CreateOptions{Timeout: 5 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	if _, err := sb.Files.Write(ctx, "/tmp/hello.txt", []byte("hello from Go\n")); err != nil {
		log.Fatal(err)
	}
	res, err := sb.Commands.Run(ctx, "cat /tmp/hello.txt", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

// Output streamed as it comes, and the exit code of a failing command.
func ExampleCommands_Run() {
	ctx := context.Background()
	c, _ := cocoon.NewClient(cocoon.Config{})
	sb, err := c.Create(ctx, cocoon.CreateOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	_, err = sb.Commands.Run(ctx, "for i in 1 2 3; do echo $i; sleep 1; done; exit 3", &cocoon.RunOptions{
		OnStdout: func(b []byte) { os.Stdout.Write(b) },
		OnStderr: func(b []byte) { os.Stderr.Write(b) },
	})
	var exit *cocoon.CommandExitError
	if errors.As(err, &exit) {
		fmt.Println("exit code", exit.ExitCode)
	}
}

// A server in the background, fed through its standard input.
func ExampleCommands_Start() {
	ctx := context.Background()
	c, _ := cocoon.NewClient(cocoon.Config{})
	sb, err := c.Create(ctx, cocoon.CreateOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	h, err := sb.Commands.Start(ctx, "read name; echo hello $name", &cocoon.RunOptions{Stdin: true})
	if err != nil {
		log.Fatal(err)
	}
	if err := h.SendStdin(ctx, []byte("world\n")); err != nil {
		log.Fatal(err)
	}
	res, err := h.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

// Errors are matched by type.
func ExampleNotFoundError() {
	c, _ := cocoon.NewClient(cocoon.Config{})
	_, err := c.Info(context.Background(), "no-such-sandbox")
	var nf *cocoon.NotFoundError
	if errors.As(err, &nf) {
		fmt.Println("no such sandbox")
	}
}

// Changes under a directory.
func ExampleFilesystem_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _ := cocoon.NewClient(cocoon.Config{})
	sb, err := c.Create(ctx, cocoon.CreateOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(context.Background())

	w, err := sb.Files.Watch(ctx, "/tmp", cocoon.WatchOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Stop()
	sb.Files.Write(ctx, "/tmp/new.txt", []byte("x"))
	ev := <-w.Events
	fmt.Println(ev.Type, ev.Name)
}

// Every sandbox with some metadata, page by page.
func ExampleClient_List() {
	ctx := context.Background()
	c, _ := cocoon.NewClient(cocoon.Config{})
	opts := cocoon.ListOptions{Metadata: map[string]string{"user": "alice"}}
	for {
		page, err := c.List(ctx, opts)
		if err != nil {
			log.Fatal(err)
		}
		for _, s := range page.Sandboxes {
			fmt.Println(s.SandboxID, s.State)
		}
		if page.NextToken == "" {
			break
		}
		opts.NextToken = page.NextToken
	}
}
