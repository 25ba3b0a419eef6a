import sys

from service.process.main import main

sys.exit(main())
