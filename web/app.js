/* the page's script */
