from fedsock.cli import console

console()
