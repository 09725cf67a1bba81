module github.com/realm-run/realm/sdks/go

go 1.23
