module github.com/cocoon-run/cocoon/sdk/go

go 1.22
